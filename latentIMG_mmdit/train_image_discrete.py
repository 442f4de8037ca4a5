"""The discrete image<->caption MMDiT with the original's flags (``latentIMG_mmdit/cli.py``); builds
its codebook into OUT/codebook.npz on first use unless --codebook names one.

    python latentIMG_mmdit/train_image_discrete.py --data-root DIR --epochs 50 --batch-size 8 \\
        --dim-text 768 --dim-image 512 --output-dir OUT
"""
from latentIMG_mmdit.cli import main

if __name__ == "__main__":
    main("discrete")
