"""The `tevia` command line: cli (the dispatcher), predict, evaluate (with clicks), demo, domain."""
