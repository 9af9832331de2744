"""`gemma3-runtime` command line: one module per subcommand, each exposing `add_parser(subparsers)` and `main(args)`."""
