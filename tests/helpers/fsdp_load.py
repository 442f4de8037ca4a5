"""Run by torchrun (2 ranks): the bridge built on meta, sharded with FSDP2, then its backbone
loaded; each rank writes what it read and whether the result is the pretrained model."""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from mmldlm.config import compose
from mmldlm.objective import lookup
from mmldlm.sources import open_sources
from mmldlm.sources.weights import canonical
from mmldlm.train import distributed as D
from wedlm_bridge.backbone import load_backbone

tiny, out = sys.argv[1], Path(sys.argv[2])
dist = D.setup("cpu", need_group=True)
cfg = compose("wedlm8b_ar_bridge", ["model=tiny", f"model.pretrained_local_dir={tiny}", f"data.tokenizer_name={tiny}",
                                    "data.data_files.train=x", "training.parallelism=fsdp", "data.max_seq_len=32",
                                    "model.pretrained_model_dtype=float32"])
entry = lookup(cfg.objective)
sources = open_sources(cfg, entry)
torch.manual_seed(0)
obj = entry.build(cfg, sources)
assert all(p.is_meta for p in obj.backbone.parameters())  # built: nothing of the backbone allocated
D.wrap(obj, "fsdp", dist, bf16=False)
report = sources.load(obj, "cpu")["backbone"]
files = load_file(str(Path(tiny) / "model.safetensors"))
equal = True
for name, p in obj.backbone.named_parameters():
    full = p.full_tensor() if hasattr(p, "full_tensor") else p
    if canonical(name) in files:
        equal &= torch.equal(full, files[canonical(name)])
ids = torch.randint(1000, 2000, (2, 8), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    sharded = obj.backbone(input_ids=ids).logits
    plain = load_backbone(tiny, "float32")(input_ids=ids).logits
(out / f"rank{dist.rank}.json").write_text(json.dumps({
    "elements_read": report.elements_read, "elements_total": report.elements_total,
    "full_tensors_equal_the_files": bool(equal),
    "logits_equal_a_plain_load": torch.allclose(sharded, plain, atol=1e-5)}))
D.barrier()
D.teardown()
