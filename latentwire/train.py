"""LatentWire on the shared loop, with the users' flags.

    python latentwire/train.py --llama_id ID_OR_DIR --qwen_id ID_OR_DIR --samples 87599 --epochs 24 \\
        --batch_size 64 --latent_len 32 --d_z 256 --encoder_type byte --dataset squad --data_file train-v1.1.json \\
        --sequential_models --warm_anchor_text "Answer: " --first_token_ce_weight 0.5 --output_dir runs/NAME
    torchrun --nproc_per_node N latentwire/train.py ...        (the same flags; --batch_size is the global batch)

`python latentwire/train.py --help` lists every flag and the config key it sets.
"""
from latentwire.cli import train_main

if __name__ == "__main__":
    train_main()
