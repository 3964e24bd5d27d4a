"""PNG plots of an evaluation: per-technique F1 bars, PR curves, t-SNE map, label co-occurrence."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: written to files, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402


def _short(label: str) -> str:
    return label if len(label) <= 28 else label[:26] + "…"


def f1_bars(per_label: list[dict[str, object]], path: Path) -> None:
    labels = [_short(str(r["label"])) for r in per_label]
    f1 = [float(r["f1"]) for r in per_label]  # type: ignore[arg-type]
    support = [int(r["support"]) for r in per_label]  # type: ignore[call-overload]
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.barh(range(len(labels)), f1, color=["tab:blue" if s else "tab:gray" for s in support])
    ax.set_yticks(range(len(labels)), [f"{lab} (n={s})" for lab, s in zip(labels, support, strict=True)], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("F1 (grey: no positive example; zero_division=1 scores it 1.0)")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pr_curves(y: np.ndarray, probs: np.ndarray, labels: list[str], path: Path, top: int = 8) -> None:
    """Curves of the `top` most frequent techniques present in the data (rare ones are noise)."""
    order = [i for i in np.argsort(-y.sum(0)) if y[:, i].sum() > 0][:top]
    fig, ax = plt.subplots(figsize=(7, 6))
    for i in order:
        p, r, _ = precision_recall_curve(y[:, i], probs[:, i])
        ax.plot(r, p, label=f"{_short(labels[i])} (n={int(y[:, i].sum())})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    if order:  # a set without technique labels (Hateful Memes) has no curve to label
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tsne_map(features: np.ndarray, y: np.ndarray, labels: list[str], path: Path, seed: int = 0) -> None:
    """2-D t-SNE of the fused features, coloured by each meme's rarest technique (most informative)."""
    if len(features) < 5:
        return
    xy = TSNE(n_components=2, perplexity=min(30.0, len(features) - 1.0), random_state=seed, init="pca").fit_transform(
        features
    )
    freq = y.sum(0)
    colour = np.full(len(y), -1)
    for n in range(len(y)):
        present = np.flatnonzero(y[n])
        if len(present):
            colour[n] = present[np.argmin(freq[present])]
    fig, ax = plt.subplots(figsize=(8, 7))
    cmap = plt.get_cmap("tab20")  # 22 techniques: 20 colours, then a second marker shape
    for c in np.unique(colour):
        m = colour == c
        style = {"color": "black", "marker": "x"} if c < 0 else {"color": cmap(c % 20), "marker": "o^"[c // 20]}
        ax.scatter(xy[m, 0], xy[m, 1], s=12, label="(none)" if c < 0 else _short(labels[c]), **style)
    ax.legend(fontsize=6, markerscale=1.5, ncol=2)
    ax.set_title("t-SNE of fused features, coloured by rarest technique")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cooccurrence(y: np.ndarray, labels: list[str], path: Path) -> None:
    counts = y.T @ y
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(np.log1p(counts), cmap="viridis")
    ax.set_xticks(range(len(labels)), [_short(lab) for lab in labels], rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), [_short(lab) for lab in labels], fontsize=6)
    fig.colorbar(im, ax=ax, label="log(1 + memes with both)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
