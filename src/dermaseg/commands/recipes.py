"""`dermaseg recipes`: the recipes shipped with dermaseg (list, show) and the recipe's JSON
Schema (for editors that complete and check YAML)."""

from __future__ import annotations

import json

import typer

app = typer.Typer(
    help="The shipped recipes (usable by name: --config cpu_small) and the recipe schema.",
    no_args_is_help=True,
)


@app.command("list")
def list_recipes() -> None:
    """Name and one-line description of each shipped recipe."""
    from dermaseg.recipes import recipe_summaries

    rows = recipe_summaries()
    width = max(len(name) for name, _ in rows)
    for name, summary in rows:
        typer.echo(f"{name:<{width}}  {summary}")


@app.command("show")
def show(name: str = typer.Argument(..., help="A shipped recipe's name (`recipes list`).")
         ) -> None:
    """Print a shipped recipe's YAML (copy it to start a recipe of your own)."""
    from dermaseg.recipes import recipe_text

    typer.echo(recipe_text(name), nl=False)


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of a recipe, for editors that complete and check YAML."""
    from dermaseg.config_io import recipe_schema

    typer.echo(json.dumps(recipe_schema(), indent=2))
