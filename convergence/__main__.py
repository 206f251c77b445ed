from convergence.cli.app import main

main()
