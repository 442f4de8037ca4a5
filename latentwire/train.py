"""LatentWire on the shared loop, with the users' flags.

    python latentwire/train.py --llama-id ID_OR_DIR --qwen-id ID_OR_DIR --samples 87599 --epochs 24 \\
        --batch-size 64 --latent-len 32 --d-z 256 --encoder-type byte --dataset squad --data-file train-v1.1.json \\
        --sequential-models --warm-anchor-text "Answer: " --first-token-ce-weight 0.5 --output-dir runs/NAME
    torchrun --nproc_per_node N latentwire/train.py ...        (the same flags; --batch-size is the global batch)

The underscore spellings (``--batch_size``, ``--output_dir``, ...) are the same flags. A flag not
given keeps the value of ``--config-name latentwire``. ``python latentwire/train.py --help`` lists
every flag and the config key it sets.
"""
from latentwire.cli import train_main

if __name__ == "__main__":
    train_main()
