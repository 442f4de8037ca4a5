"""The image<->caption MMDiT on the shared loop, Hydra form (DDP / FSDP, bf16, resume, logs).

    torchrun --nproc_per_node N latentIMG_mmdit/train_image.py --config-name image_continuous|image_discrete \\
        data.data_files.train=DIR/train_data.json [overrides]
"""
from latentIMG_mmdit.objective import CONFIGS
from mmldlm.config import hydra_main

if __name__ == "__main__":
    hydra_main(CONFIGS, "image_continuous")
