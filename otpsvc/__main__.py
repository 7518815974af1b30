from otpsvc.cli import main

main()
