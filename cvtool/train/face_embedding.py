"""`cvtool train face`: an embedding network trained so that one person's faces lie close together.

Data is one folder per identity. Training batches are P identities x K images (so every anchor has
positives and negatives in its own batch for online triplet mining, cvtool.ops.triplet); `--loss
binary` instead trains the Siamese logistic unit on every same/different pair of the batch.
Validation holds out whole identities (a verifier meets people it never saw): every same/different
pair of their images is scored by embedding distance, giving ROC AUC, and the distance threshold with
the best accuracy, which goes into the checkpoint (`threshold`) for `cvtool verify-face`.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvtool.errors import UsageError
from cvtool.models.registry import ModelEntry
from cvtool.ops.preprocess import Preprocess
from cvtool.ops.triplet import binary_pair_loss, pairwise_distances, triplet_loss
from cvtool.ops.verification import accuracy_at, fit_threshold
from cvtool.train.datasets import DataError, LabelledImages, check_val_split
from cvtool.train.engine import Trainer
from cvtool.train.recipes import FaceTrainArgs

TASK = "face-embed"
LOSSES = ("triplet", "binary")
MINING = {"semi-hard": "semi_hard", "hard": "batch_hard"}  # CLI spelling -> cvtool.ops.triplet's


# -- data ---------------------------------------------------------------------------------------

def open_identity_folders(root: str | Path) -> LabelledImages:
    """One sub-folder of images per person (ImageFolder layout); each person needs 2+ images."""
    from cvtool.train.datasets import _image_files

    root = Path(root)
    if not root.is_dir():
        raise DataError("no such directory (expected one sub-folder of face images per person)", root)
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {d.name: _image_files(d) for d in folders}
    files = {name: found for name, found in files.items() if found}
    if len(files) < 2:
        found = f"only one identity ({next(iter(files))!r})" if files else "no identity folders with images"
        raise DataError(f"{found}; face training needs one sub-folder of images per person, for several people", root)
    _require_pairs({name: len(found) for name, found in files.items()}, root)
    sources, labels = [], []
    for index, name in enumerate(files):
        sources += files[name]
        labels += [index] * len(files[name])
    return LabelledImages(sources, labels, list(files), str(root))


def _require_pairs(counts: dict[str, int], origin) -> None:
    single = [name for name, n in counts.items() if n < 2]
    if single:
        raise DataError(f"identit{'y' if len(single) == 1 else 'ies'} with a single image: {', '.join(single[:5])}; "
                        "each person needs at least 2 images (a same-person pair)", origin)


def split_identities(n_identities: int, fraction: float, seed: int, origin=None) -> tuple[list[int], list[int]]:
    """(train, val) identity indices: whole people held out, at least 2 on each side."""
    check_val_split(fraction)
    n_val = max(2, round(n_identities * fraction))
    if n_identities - n_val < 2:
        raise DataError(f"{n_identities} identities are too few to hold {n_val} out and train on the rest; "
                        "need at least 4 people", origin)
    order = np.random.default_rng(seed).permutation(n_identities)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def subset_identities(data: LabelledImages, identities: list[int]) -> LabelledImages:
    keep = set(identities)
    return data.subset([i for i, label in enumerate(data.labels) if label in keep])


class PKBatchSampler:
    """Batches of P distinct identities x K images each, for in-batch triplet mining.

    Identities are visited in shuffled order, refilled with a new permutation when fewer than P remain
    (so every person appears about equally often); each picks K of its images without replacement, or
    all of them plus random repeats when it has fewer than K. An epoch is as many batches as make up
    about one pass over the images. All randomness comes from `generator`, which the engine seeds per
    epoch, so a resumed run draws the same batches."""

    def __init__(self, labels: list[int], p: int, k: int, batches: int | None = None,
                 generator: torch.Generator | None = None):
        self.by_identity: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.by_identity.setdefault(int(label), []).append(index)
        if len(self.by_identity) < 2:
            raise UsageError("P x K batches need at least 2 identities")
        if k < 2:
            raise UsageError("--images-per-identity must be at least 2 (an anchor and a positive)")
        self.p, self.k = min(p, len(self.by_identity)), k
        self.batches = batches or max(1, round(len(labels) / (self.p * self.k)))
        self.generator = generator

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        identities = list(self.by_identity)
        queue: list[int] = []
        for _ in range(self.batches):
            chosen: list[int] = []
            while len(chosen) < self.p:
                if not queue:
                    queue = [identities[i] for i in torch.randperm(len(identities), generator=self.generator).tolist()]
                candidate = queue.pop(0)
                if candidate not in chosen:
                    chosen.append(candidate)
                else:  # seen in this batch already (the refill began again): keep it for a later batch
                    queue.append(candidate)
            batch = []
            for identity in chosen:
                members = self.by_identity[identity]
                order = torch.randperm(len(members), generator=self.generator).tolist()
                if len(members) < self.k:
                    extra = torch.randint(len(members), (self.k - len(members),), generator=self.generator).tolist()
                    order += extra
                batch += [members[i] for i in order[: self.k]]
            yield batch


# -- verification scores -------------------------------------------------------------------------

def pair_distances(embeddings: torch.Tensor | np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance and same-person flag of every unordered pair i < j."""
    emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    lab = np.asarray(labels)
    i, j = np.triu_indices(len(lab), k=1)
    d = pairwise_distances(emb).numpy()[i, j].astype(np.float64)
    return d, lab[i] == lab[j]


def verification_report(distances: np.ndarray, same: np.ndarray) -> dict:
    """ROC AUC, the best threshold and its accuracy, and the pair counts (cvtool.ops.verification's one fit)."""
    fitted = fit_threshold(distances, same)
    return {key: fitted[key] for key in ("roc_auc", "accuracy", "threshold", "same_pairs", "different_pairs")}


COLLAPSED_DISTANCE = 0.05  # unit-length embeddings of different people this close on average: all one point


def collapse_warning(distances: np.ndarray, same: np.ndarray) -> str | None:
    """A line saying the embedding has collapsed (every face mapped to about one point), or None.

    Random unit vectors in 128-D lie about 1.41 apart; a network whose held-out different-person pairs
    average under COLLAPSED_DISTANCE cannot tell anyone apart, whatever its accuracy says (that is then
    about the share of different-person pairs, with a threshold near 0 and a triplet loss at the margin)."""
    different = distances[~np.asarray(same, dtype=bool)]
    if not len(different) or float(different.mean()) >= COLLAPSED_DISTANCE:
        return None
    return (f"the embedding has collapsed: held-out faces of different people are on average {float(different.mean()):.4f} "
            "apart (about 1.4 for unrelated directions), so this model cannot tell people apart and its threshold is "
            "meaningless; try a lower --lr, semi-hard mining or more images per person")


def save_roc(distances: np.ndarray, same: np.ndarray, threshold: float, path: Path, title: str = "") -> str:
    """The ROC curve of 'same person iff distance < t' over t, with the chosen threshold marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from cvtool.train.plots import pyplot, save_figure

    fpr, tpr, _ = roc_curve(same, -distances)
    predicted = distances < threshold
    point = (float(predicted[~same].mean()), float(predicted[same].mean()))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"ROC AUC {roc_auc_score(same, -distances):.4f}")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
    ax.plot(*point, "o", color="C3", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="false accept rate", ylabel="true accept rate", xlim=(0, 1), ylim=(0, 1.01),
           title=title or "verification ROC (held-out identities, all pairs)")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


# -- the task -------------------------------------------------------------------------------------

@dataclass
class EmbeddingState:
    embeddings: list = field(default_factory=list)
    labels: list = field(default_factory=list)


class FaceTask:
    """Loss on a batch's embeddings and identity labels; metrics on all pairs of the held-out people."""

    name = TASK

    def __init__(self, entry: ModelEntry, preprocess: Preprocess, build, *, loss: str, margin: float, mining: str,
                 checkpoint_extra: dict):
        if loss not in LOSSES:
            raise UsageError(f"unknown --loss {loss!r}; choose from {', '.join(LOSSES)}")
        self.entry, self.preprocess, self._build = entry, preprocess, build
        self.loss_name, self.margin, self.mining = loss, margin, mining
        self.checkpoint_extra = checkpoint_extra  # the engine's extra_fields: the threshold is written here
        self.model: nn.Module | None = None
        self.bn_data = None  # training images (unaugmented) whose batch-norm statistics validation uses

    def build_model(self) -> nn.Module:
        self.model = self._build()
        return self.model

    def loss(self, outputs, targets):
        if self.loss_name == "binary":
            return binary_pair_loss(outputs, targets, self.model.pair_head)
        return triplet_loss(outputs, targets, self.margin, self.mining)

    def start_metrics(self) -> EmbeddingState:
        if self.bn_data is not None and self.model is not None:
            recompute_batchnorm(self.model, self.bn_data)
        return EmbeddingState()

    def update_metrics(self, state: EmbeddingState, outputs, targets) -> None:
        state.embeddings.append(outputs.float().cpu())
        state.labels.append(targets.cpu())

    def finish_metrics(self, state: EmbeddingState) -> dict[str, float]:
        distances, same = pair_distances(torch.cat(state.embeddings), torch.cat(state.labels).numpy())
        report = verification_report(distances, same)
        # Saved with this epoch's checkpoints (best.pt and last.pt), so each carries its own threshold.
        self.checkpoint_extra["threshold"] = report["threshold"]
        self.checkpoint_extra["verification"] = {
            "distance": "euclidean", "same_if": "distance < threshold",
            "chosen_on": "all pairs of the held-out validation identities", **report,
        }
        return {"roc_auc": report["roc_auc"], "accuracy": report["accuracy"], "threshold": report["threshold"]}

    def checkpoint_fields(self) -> dict:
        return {"arch": self.entry.name, "task": TASK, "classes": None, "preprocess": self.preprocess.to_dict()}


BN_IMAGES = 1024  # training images that set the batch-norm statistics before each validation
BN_BATCH = 64


def recompute_batchnorm(model: nn.Module, dataset, images: int = BN_IMAGES, batch_size: int = BN_BATCH) -> None:
    """Set every batch norm's running statistics to the exact average over (up to `images` of) `dataset`.

    The running averages (momentum 0.1) lag far behind the weights when an epoch is a handful of P x K
    batches: in eval mode the features then drown in a stale mean, and every face maps to about the
    same embedding (validation loss stuck at the margin). Recomputing them from the current weights
    ("precise BN") before each validation fixes that; it changes no weight, so training itself, and a
    resumed run, are unchanged. A model without batch norm (dlib's ResNet) is left alone."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or len(dataset) == 0:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    device = next(model.parameters()).device
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch counts equally
    model.train()
    indices = list(range(min(images, len(dataset))))
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            if len(chunk) < 2:  # batch norm needs two samples (and one more adds almost nothing)
                break
            model(torch.stack([dataset[i][0] for i in chunk]).to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


# -- the recipe -----------------------------------------------------------------------------------

def resumed_arguments(run_dir: Path, epochs: int | None):
    from cvtool.train.engine import stored_run

    args, cfg = stored_run(run_dir, epochs)
    return FaceTrainArgs(**args), cfg


def default_lr(arch: str) -> float:
    """Smaller steps when fine-tuning an embedder that comes with weights than when starting from scratch."""
    from cvtool.models.registry import get_entry

    return 1e-4 if get_entry(arch, TASK).weights is not None else 1e-3


def _preprocess(entry: ModelEntry, img_size: int | None) -> Preprocess:
    base = entry.preprocess()
    native = base.crop_size or base.resize_size
    if not img_size or img_size == native:
        return base
    if entry.weights is not None:
        raise UsageError(f"{entry.name} is fine-tuned from its weights at {native} px; drop --img-size")
    return Preprocess(**{**base.to_dict(), "crop_size": img_size, "resize_size": img_size})


def _arch_kwargs(entry: ModelEntry, loss: str) -> dict:
    if loss != "binary":
        return {}
    if "pair_head" not in inspect.signature(entry.builder).parameters:
        raise UsageError(f"--loss binary needs an embedder with a pair head (face_embed_small); {entry.name} has none")
    return {"pair_head": True}


def _build(entry: ModelEntry, arch_kwargs: dict, progress: bool):
    """Fresh for embedders without weights; entries with weights (dlib's ResNet) are fine-tuned from them."""
    def build() -> nn.Module:
        model = entry.build(**arch_kwargs)
        if entry.weights is not None:
            from cvtool.models.checkpoint import apply_state_dict, load_weights_file

            loaded = load_weights_file(entry.weights.local_path(progress=progress, alternative=None))
            apply_state_dict(model, loaded.state_dict, source=str(loaded.path), model_name=entry.name)
        return model

    return build


def prepare_data(args: FaceTrainArgs, preprocess: Preprocess, seed: int, on_skip=None):
    """(train, val, skipped): decoded once, split by identity; bad files dropped and reported."""
    from cvtool.train.datasets import decode_all

    data = open_identity_folders(args.data)
    train_ids, val_ids = split_identities(len(data.classes), args.val_split, seed, args.data)
    data = decode_all(data, preprocess.resize_size, on_skip)
    _require_pairs({name: data.labels.count(i) for i, name in enumerate(data.classes)}, args.data)
    return subset_identities(data, train_ids), subset_identities(data, val_ids), data.skipped


@torch.inference_mode()
def embed_all(model: nn.Module, dataset, device, batch_size: int = 128) -> np.ndarray:
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    return torch.cat([model(x.to(device)).float().cpu() for x, _ in loader]).numpy()


def run_training(args: FaceTrainArgs, cfg, run_dir: Path, device, *, resume: bool = False, callbacks=None,
                 on_skip=None, on_warning=None, progress: bool = True) -> dict:
    """Train (or resume) an embedder into `run_dir`; return the summary also written to summary.json.

    A collapsed embedding (every face mapped to about one point) is not an error: the run's files are
    written, the summary's `collapsed` is true and `warnings` says so, and `on_warning` (if given) is
    called with that line, so a caller can show it; such a model is useless for verification."""
    from cvtool.models.registry import get_entry
    from cvtool.train import plots
    from cvtool.train.datasets import Augment, ClassificationDataset

    start = time.perf_counter()
    if cfg.monitor == "val_auc":  # the metric's name before it became roc_auc, as stored by older runs
        cfg = dataclasses.replace(cfg, monitor="val_roc_auc")
    if args.mining not in MINING:
        raise UsageError(f"unknown --mining {args.mining!r}; choose from {', '.join(MINING)}")
    if args.loss not in LOSSES:
        raise UsageError(f"unknown --loss {args.loss!r}; choose from {', '.join(LOSSES)}")
    if cfg.sync_bn:  # its validation recomputes batch-norm statistics on rank 0 alone, which SyncBatchNorm cannot
        raise UsageError("--sync-bn is not available for train face (rank 0 alone recomputes its batch-norm "
                         "statistics before each validation)")
    entry = get_entry(args.arch, TASK)
    preprocess = _preprocess(entry, args.img_size)
    arch_kwargs = _arch_kwargs(entry, args.loss)
    train_data, val_data, skipped = prepare_data(args, preprocess, cfg.seed, on_skip)
    extra = {"arch_kwargs": arch_kwargs, "train_identities": sorted({train_data.classes[i] for i in train_data.labels}),
             "val_identities": sorted({val_data.classes[i] for i in val_data.labels})}
    task = FaceTask(entry, preprocess, _build(entry, arch_kwargs, progress), loss=args.loss, margin=args.margin,
                    mining=MINING[args.mining], checkpoint_extra=extra)
    val_set = ClassificationDataset(val_data, preprocess)
    task.bn_data = ClassificationDataset(train_data, preprocess)
    p, k = args.identities_per_batch, args.images_per_identity
    trainer = Trainer(
        task, ClassificationDataset(train_data, preprocess, Augment(hflip=args.hflip)), val_set, cfg, run_dir, device,
        callbacks=callbacks, args=vars(args).copy(), extra_fields=extra,
        train_batches=lambda dataset, generator: PKBatchSampler(dataset.data.labels, p, k, generator=generator),
    )
    if resume:
        trainer.resume(run_dir / "last.pt")
    state = trainer.fit()
    if not trainer.is_main:  # rank 0 scores, plots and writes the summary; the others get it
        return trainer.share_summary(None)

    best_epoch = trainer.load_best_into(run_dir / "best.pt")
    val_d, val_same = pair_distances(embed_all(trainer.scored_model, val_set, device), val_data.labels)
    val = verification_report(val_d, val_same)
    # The honest operating point: a threshold chosen on the training people, applied to unseen ones.
    train_d, train_same = pair_distances(embed_all(trainer.scored_model, ClassificationDataset(train_data, preprocess), device),
                                         train_data.labels)
    train_fit = fit_threshold(train_d, train_same)
    train_threshold, train_accuracy = train_fit["threshold"], train_fit["accuracy"]
    warning = collapse_warning(val_d, val_same)
    if warning and on_warning:
        on_warning(warning)
    plots.save_curves(state.history, run_dir / "curves.png")
    save_roc(val_d, val_same, val["threshold"], run_dir / "roc.png")
    summary = {
        "task": TASK, "arch": entry.name, "loss": args.loss, "mining": args.mining if args.loss == "triplet" else None,
        "margin": args.margin if args.loss == "triplet" else None,
        "batch": {"identities": trainer.train_loader.batch_sampler.batches.p, "images_per_identity": args.images_per_identity},
        "train_identities": len(extra["train_identities"]), "val_identities": extra["val_identities"],
        "train_images": len(train_data), "val_images": len(val_data), "skipped_files": len(skipped),
        "epochs": state.epoch, "best_epoch": best_epoch,
        "val": {**val, "accuracy_at_train_threshold": accuracy_at(val_d, val_same, train_threshold)},
        "train_threshold": train_threshold, "train_pairs_accuracy": train_accuracy,
        "collapsed": warning is not None, "warnings": [warning] if warning else [],
        "seconds": round(time.perf_counter() - start, 2),
        "checkpoints": {"best": str(run_dir / "best.pt"), "last": str(run_dir / "last.pt")},
    }
    return trainer.finish(summary)
