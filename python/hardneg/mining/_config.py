"""The miner's settings: one frozen :class:`MiningConfig`, built and checked by :func:`build_config`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from hardneg._threads import resolve_num_threads
from hardneg._validate import check_bool, check_choice, check_float, check_int, check_optional_int
from hardneg.retrievers import RETRIEVERS

SAMPLING = ("top", "random", "softmax")
FORMATS = ("sentence-transformers", "triplet", "flagembedding", "tevatron", "ids")
POSITIVE_ANCHORS = ("min", "max", "mean")
ST_RULES = ("6.3", "6.2")  # sentence-transformers releases whose candidate rule can be followed
METRICS = ("cosine", "ip")
POSITIVE_NOT_IN_TOP = ("drop", "flag")  # what becomes of a query whose best positive is not retrieved

Rescorer = Callable[[List[str], List[str]], Any]


@dataclass(frozen=True)
class MiningConfig:
    """What to mine and how (checked; see :func:`hardneg.mine_hard_negatives` for the meaning of each).

    ``shallow_first`` (internal): with ``sampling="top"``, search ``range_min + num_negatives + slack``
    deep first and search again only the queries whose survivors fall short (same result, faster).
    ``require_positive_in_top`` / ``positive_not_in_top``: the positive-in-top filter (None: off).
    """

    retriever: str
    num_negatives: int
    range_min: int
    range_max: int
    relative_margin: Optional[float]
    absolute_margin: Optional[float]
    max_score: Optional[float]
    min_score: Optional[float]
    sampling: str
    temperature: float
    rescorer: Optional[Rescorer]
    seed: int
    num_threads: int
    positive_anchor: str
    metric: str
    rrf_k: int
    exclude_self: bool
    exclude_same_text: bool
    batch_size: int
    encode_batch_size: int
    progress: bool
    st_rule: str
    shallow_first: bool = True
    require_positive_in_top: Optional[int] = None
    positive_not_in_top: str = "drop"

    def params(self, metric_used: bool, depth: int) -> dict:
        """The settings recorded in ``MinedNegatives.params``."""
        return dict(retriever=self.retriever, num_negatives=self.num_negatives, range_min=self.range_min,
                    range_max=self.range_max, relative_margin=self.relative_margin,
                    absolute_margin=self.absolute_margin, max_score=self.max_score, min_score=self.min_score,
                    sampling=self.sampling, temperature=self.temperature, seed=self.seed,
                    positive_anchor=self.positive_anchor, metric=self.metric if metric_used else None,
                    rescorer=self.rescorer is not None, depth=depth, st_rule=self.st_rule,
                    require_positive_in_top=self.require_positive_in_top,
                    positive_not_in_top=self.positive_not_in_top if self.require_positive_in_top else None)

    def knobs(self) -> dict:
        """Every setting that decides the result, as JSON values (for the run's manifest)."""
        return dict(num_negatives=self.num_negatives, range_min=self.range_min, range_max=self.range_max,
                    relative_margin=self.relative_margin, absolute_margin=self.absolute_margin,
                    max_score=self.max_score, min_score=self.min_score, sampling=self.sampling,
                    temperature=self.temperature, seed=self.seed, positive_anchor=self.positive_anchor,
                    metric=self.metric, rrf_k=self.rrf_k, exclude_self=self.exclude_self,
                    exclude_same_text=self.exclude_same_text, st_rule=self.st_rule,
                    rescorer=self.rescorer is not None, require_positive_in_top=self.require_positive_in_top,
                    positive_not_in_top=self.positive_not_in_top)


def cross_encoder_rescorer(model: Any) -> Rescorer:
    """A rescorer from a sentence-transformers ``CrossEncoder`` (anything with ``.predict(pairs)``)."""
    if not callable(getattr(model, "predict", None)):
        raise TypeError(f"cross_encoder must have .predict(list of (query, document) pairs), "
                        f"got {type(model).__name__}")
    takes_progress = "show_progress_bar" in _parameters(model.predict)

    def rescore(queries: List[str], docs: List[str]) -> Any:
        pairs = list(zip(queries, docs))
        if takes_progress:
            return model.predict(pairs, show_progress_bar=False)
        return model.predict(pairs)

    return rescore


def _parameters(fn: Callable) -> dict:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return {}


def _alias(value: Any, default: Any, alias: Any, name: str, alias_name: str) -> Any:
    """``value``, or ``alias`` when only the alias was given; both given is a TypeError.

    (A value equal to the default cannot be told from an omitted one: the alias wins then.)
    """
    if alias is None:
        return value
    if value is not default and value != default:
        raise TypeError(f"give {name}= or {alias_name}= (sentence-transformers' name), not both")
    return alias


def build_config(retriever: str = "dense", *, num_negatives: int = 8, range_min: int = 10, range_max: int = 100,
                 relative_margin: Optional[float] = 0.05, absolute_margin: Optional[float] = None,
                 max_score: Optional[float] = None, min_score: Optional[float] = None, sampling: Any = "top",
                 temperature: float = 0.05, rescorer: Optional[Rescorer] = None, seed: int = 0,
                 num_threads: Optional[int] = None, positive_anchor: str = "min", metric: str = "cosine",
                 rrf_k: int = 60, exclude_self: bool = True, exclude_same_text: bool = True,
                 batch_size: int = 2048, encode_batch_size: int = 256, progress: bool = True,
                 st_rule: str = "6.3", sampling_strategy: Optional[str] = None, cross_encoder: Any = None,
                 shallow_first: bool = True, require_positive_in_top: Optional[int] = None,
                 positive_not_in_top: str = "drop") -> MiningConfig:
    """Check every setting (TypeError / ValueError naming the argument) and freeze them.

    Parameters
    ----------
    retriever, num_negatives, range_min, range_max, ... : as :func:`hardneg.mine_hard_negatives`
    sampling_strategy : str, optional
        sentence-transformers' name for ``sampling``.
    cross_encoder : optional
        sentence-transformers' name for the rescorer: a ``CrossEncoder``, or anything with
        ``.predict(list of (query, document) pairs)``.  Giving both names of one setting is a TypeError.
    shallow_first : bool
        Allow the shallow first search (``sampling="top"``; same result, faster).
    require_positive_in_top : int, optional
        Keep only queries whose best positive is in the retriever's top K (``positive_not_in_top``:
        "drop" removes the others from the output, "flag" keeps and marks them).

    Returns
    -------
    MiningConfig
    """
    sampling = _alias(sampling, "top", sampling_strategy, "sampling", "sampling_strategy")
    if cross_encoder is not None:
        rescorer = _alias(rescorer, None, cross_encoder_rescorer(cross_encoder), "rescorer", "cross_encoder")
    check_choice(retriever, "retriever", RETRIEVERS)
    check_choice(sampling, "sampling", SAMPLING)
    check_choice(positive_anchor, "positive_anchor", POSITIVE_ANCHORS)
    check_choice(metric, "metric", METRICS)
    check_choice(st_rule, "st_rule", ST_RULES)
    check_choice(positive_not_in_top, "positive_not_in_top", POSITIVE_NOT_IN_TOP)
    num_negatives = check_int(num_negatives, "num_negatives", 1)
    range_min = check_int(range_min, "range_min", 0)
    range_max = check_int(range_max, "range_max", 1)
    if range_min >= range_max:
        raise ValueError(f"range_min ({range_min}) must be smaller than range_max ({range_max})")
    if num_negatives > range_max - range_min:
        raise ValueError(f"cannot mine num_negatives={num_negatives} from ranks {range_min}..{range_max - 1} "
                         f"({range_max - range_min} positions): lower num_negatives or widen the range")
    if rescorer is not None and not callable(rescorer):
        raise TypeError("rescorer must be callable(queries, docs) -> scores")
    return MiningConfig(
        retriever=retriever, num_negatives=num_negatives, range_min=range_min, range_max=range_max,
        relative_margin=check_float(relative_margin, "relative_margin"),
        absolute_margin=check_float(absolute_margin, "absolute_margin"),
        max_score=check_float(max_score, "max_score"), min_score=check_float(min_score, "min_score"),
        sampling=sampling, temperature=check_float(temperature, "temperature", positive=True, optional=False),
        rescorer=rescorer, seed=check_int(seed, "seed", 0), num_threads=resolve_num_threads(num_threads),
        positive_anchor=positive_anchor, metric=metric, rrf_k=check_int(rrf_k, "rrf_k", 0),
        exclude_self=check_bool(exclude_self, "exclude_self"),
        exclude_same_text=check_bool(exclude_same_text, "exclude_same_text"),
        batch_size=check_int(batch_size, "batch_size", 1),
        encode_batch_size=check_int(encode_batch_size, "encode_batch_size", 1),
        progress=bool(progress), st_rule=st_rule, shallow_first=bool(shallow_first),
        require_positive_in_top=check_optional_int(require_positive_in_top, "require_positive_in_top", 1),
        positive_not_in_top=positive_not_in_top)
