"""Finding, checking, preparing and loading image/mask pairs."""
