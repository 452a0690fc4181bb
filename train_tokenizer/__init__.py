"""Training DOVE / Q-DOVE tokenizers: `dove train` (see `train_tokenizer.train.train`)."""
