"""LatentWire test helpers: a small config over given LLM directories, an objective with a
collated batch, and QA records whose answers are 1 to 5 words long."""
import torch
from omegaconf import OmegaConf

from latentwire import data as D
from latentwire.schema import LatentWireRunConfig
from mmldlm.config import validate


def lw_cfg(llms: dict, **over):
    base = {"model": {"llms": [{"name": n, "path": p} for n, p in llms.items()], "llm_dtype": "float32", "d_z": 32,
                      "encoder_type": "byte", "encoder_layers": 1, "encoder_heads": 4, "latent_len": 4,
                      "max_bytes": 512, "anchor_text": "Answer: "},
            "data": {"data_files": {"train": "unused"}}, "training": {"num_train_steps": 10},
            "loss": {"kd_cache": False}}  # the live teacher (the cache's tests turn it on, in a tmp dir)
    cfg = OmegaConf.merge(OmegaConf.structured(LatentWireRunConfig), base,
                          OmegaConf.from_dotlist([f"{k}={v}" for k, v in over.items()]))
    validate(cfg, LatentWireRunConfig)
    return cfg


def objective_and_batch(cfg, records):
    from latentwire.objective import collator
    from mmldlm.objective import lookup
    from mmldlm.sources import build_loaded, open_sources

    torch.manual_seed(0)
    obj = build_loaded(cfg)
    batch = collator(cfg, open_sources(cfg, lookup("latentwire")))([{"index": i, "record": r}
                                                                     for i, r in enumerate(records)]).batch
    return obj, batch


# answers of 1 to 5 words: the first K = 4 steps hold rows of different lengths
RECORDS = D.synthetic_qa(2, seed=5) + [
    {"source": "Context: The bridge was built by Roman engineers.\nQuestion: Who built the bridge?\n",
     "answers": ["Roman engineers"]},
    {"source": "Context: She keeps it in the old wooden box under the stairs.\nQuestion: Where does she keep it?\n",
     "answers": ["in the old wooden box", "the old wooden box"]}]
