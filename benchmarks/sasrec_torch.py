"""SASRec.pytorch's own training loop, timed, for train_bench's side-by-side table.

Runs in a scratch environment that has torch (never a jaxrec dependency) against a
checkout of https://github.com/pmixer/SASRec.pytorch (its `python/` folder):

  python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
  git clone https://github.com/pmixer/SASRec.pytorch /tmp/SASRec.pytorch
  /tmp/torchenv/bin/python benchmarks/sasrec_torch.py --sasrec_dir=/tmp/SASRec.pytorch/python \\
      --data_path=../shared/data/beauty_s3rec.txt

It imports that checkout's `model.SASRec` and `utils` (data_partition, WarpSampler with
its 3 sampler processes) and runs main.py's training loop as written there (BCE on one
positive and one sampled negative per position, Adam with betas (0.9, 0.98)), without
its per-step print, and prints one JSON line: seconds per epoch and sequences/s over
the epochs after the first. Standard library, numpy and torch only.
"""

import argparse
import json
import os
import sys
import tempfile
import time


def write_pairs(data_path: str, out_path: str) -> int:
  """Our `user item item ...` log as SASRec.pytorch's `user item` lines, ids renumbered from 1
  in order of appearance. Returns the number of users."""
  items, users = {}, 0
  with open(data_path) as f, open(out_path, "w") as out:
    for line in f:
      fields = line.split()
      if len(fields) < 2:
        continue
      users += 1
      for item in fields[1:]:
        out.write(f"{users} {items.setdefault(item, len(items) + 1)}\n")
  return users


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sasrec_dir", required=True, help="the python/ folder of a SASRec.pytorch checkout")
  parser.add_argument("--data_path", required=True)
  parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up, not timed")
  parser.add_argument("--batch_size", type=int, default=198)
  parser.add_argument("--maxlen", type=int, default=70)
  parser.add_argument("--hidden_units", type=int, default=64)
  parser.add_argument("--num_blocks", type=int, default=2)
  parser.add_argument("--num_heads", type=int, default=2)
  parser.add_argument("--dropout_rate", type=float, default=0.2)
  parser.add_argument("--sampler_workers", type=int, default=3, help="main.py starts 3")
  args = parser.parse_args()
  data_path = os.path.abspath(args.data_path)
  sys.path.insert(0, os.path.abspath(args.sasrec_dir))
  import numpy as np
  import torch
  from model import SASRec
  from utils import WarpSampler, data_partition

  with tempfile.TemporaryDirectory() as tmp:
    os.makedirs(os.path.join(tmp, "data"))
    write_pairs(data_path, os.path.join(tmp, "data", "bench.txt"))
    os.chdir(tmp)  # data_partition reads data/<name>.txt
    user_train, _, _, usernum, itemnum = data_partition("bench")
    model_args = argparse.Namespace(device="cpu", norm_first=False, maxlen=args.maxlen, l2_emb=0.0,
                                    hidden_units=args.hidden_units, num_blocks=args.num_blocks,
                                    num_heads=args.num_heads, dropout_rate=args.dropout_rate)
    num_batch = (len(user_train) - 1) // args.batch_size + 1
    sampler = WarpSampler(user_train, usernum, itemnum, batch_size=args.batch_size, maxlen=args.maxlen,
                          n_workers=args.sampler_workers)
    model = SASRec(usernum, itemnum, model_args)
    for _, param in model.named_parameters():
      try:
        torch.nn.init.xavier_normal_(param.data)
      except ValueError:
        pass  # as main.py: 1-d parameters keep their init
    model.pos_emb.weight.data[0, :] = 0
    model.item_emb.weight.data[0, :] = 0
    model.train()
    bce = torch.nn.BCEWithLogitsLoss()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    epoch_s = []
    for _ in range(args.epochs):
      start = time.perf_counter()
      for _ in range(num_batch):
        u, seq, pos, neg = (np.array(x) for x in sampler.next_batch())
        pos_logits, neg_logits = model(u, seq, pos, neg)
        adam.zero_grad()
        indices = np.where(pos != 0)
        loss = bce(pos_logits[indices], torch.ones(pos_logits.shape)[indices])
        loss = loss + bce(neg_logits[indices], torch.zeros(neg_logits.shape)[indices])
        loss.backward()
        adam.step()
      epoch_s.append(time.perf_counter() - start)
    sampler.close()
  timed = epoch_s[1:] or epoch_s
  print(json.dumps({"epoch_s": epoch_s, "sequences": num_batch * args.batch_size,
                    "seq_per_s": num_batch * args.batch_size * len(timed) / sum(timed),
                    "loss": float(loss), "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
