from dermaseg.cli import main

main()
