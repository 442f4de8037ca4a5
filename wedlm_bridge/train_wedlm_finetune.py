"""WeDLM fine-tuning (WeDLM's dual-stream objective or plain causal-LM CE; full / LoRA / QLoRA) on the shared loop.

    torchrun --nproc_per_node N wedlm_bridge/train_wedlm_finetune.py --config-name wedlm8b_sft [overrides]
"""
from mmldlm.config import hydra_main
from wedlm_bridge.finetune.objective import CONFIGS

if __name__ == "__main__":
    hydra_main(CONFIGS, "wedlm8b_sft")
