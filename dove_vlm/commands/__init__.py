"""The `dove` command line and `dove demo`: the top layer, which may import the core, training and evaluation
(like `transformers/commands/`). Nothing in the core imports it."""
