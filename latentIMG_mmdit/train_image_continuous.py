"""The continuous image<->caption MMDiT with the original's flags (``latentIMG_mmdit/cli.py``).

    python latentIMG_mmdit/train_image_continuous.py --data-root DIR --epochs 50 --batch-size 8 \\
        --dim-text 1024 --dim-image 512 --output-dir OUT
"""
from latentIMG_mmdit.cli import main

if __name__ == "__main__":
    main("continuous")
