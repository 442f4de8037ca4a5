"""Records, the record index, the loader, collate, tokenizers and the dataset checker."""
