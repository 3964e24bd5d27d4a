"""The harm head: P(harmful) and a three-level severity, from the text the technique head already reads.

Two linear views of the text, their logits averaged (measured under grouped CV on HarMeme train+val,
docs/models.md; each alone was worse on both domains):
- `features`: the text encoder's pooled features (MPNet layers 3/6), standardised;
- `tokens`: which wordpieces of the bundle's own tokenizer occur (TF-IDF weighted, L2-normalised), a bag of
  words that catches slurs and slogans the sentence features blur. It is computed inside the graph from
  `input_ids`, so serving needs nothing new.
HarMeme has no images, so neither view reads pixels. Each view is two L2-regularised logistic regressions
(binary, and multinomial over the three severities) fitted with scikit-learn; the weights are copied into
this module so the exported ONNX graph carries them.
"""

from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from torch import nn

from models.harm_data import SEVERITIES, HarmMeme


@dataclass(frozen=True)
class HarmConfig:
    """Inverse L2 strengths of the two views (chosen by nested CV, docs/models.md)."""

    c_features: float = 0.0002
    c_tokens: float = 1.0


def token_presence(ids: np.ndarray, mask: np.ndarray, vocab: int) -> sparse.csr_matrix:
    """[N, vocab] 0/1: which token ids occur in each (padded) row."""
    rows, cols = np.nonzero(mask)
    m = sparse.csr_matrix((np.ones(len(rows)), (rows, ids[rows, cols])), shape=(ids.shape[0], vocab))
    m.data[:] = 1.0
    return m


def idf(presence: sparse.csr_matrix) -> np.ndarray:
    """Smoothed inverse document frequency (scikit-learn's TfidfTransformer formula)."""
    df = np.asarray(presence.sum(0)).ravel()
    return (np.log((1 + presence.shape[0]) / (1 + df)) + 1).astype(np.float32)


def tfidf_rows(presence: sparse.csr_matrix, weights: np.ndarray) -> sparse.csr_matrix:
    x = presence.multiply(weights[None, :]).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
    return sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ x


class HarmHead(nn.Module):
    """(txt [B, D], input_ids [B, L], attention_mask [B, L]) -> (harmful_prob [B], severity_probs [B, 3])."""

    def __init__(self, text_dim: int, vocab: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(text_dim))
        self.register_buffer("std", torch.ones(text_dim))
        self.register_buffer("idf", torch.ones(vocab))
        n_out = 1 + len(SEVERITIES)  # binary logit, then the three severity logits
        self.features = nn.Linear(text_dim, n_out)
        self.tokens = nn.Linear(vocab, n_out)

    def forward(
        self, txt: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = (txt - self.mean) / self.std
        present = torch.zeros(input_ids.shape[0], self.idf.shape[0], dtype=txt.dtype, device=txt.device)
        present = present.scatter_add(1, input_ids, attention_mask.to(txt.dtype)).clamp(max=1.0)
        bag = present * self.idf
        bag = bag / bag.norm(dim=1, keepdim=True).clamp_min(1e-12)
        logits = (self.features(z) + self.tokens(bag)) / 2
        return torch.sigmoid(logits[:, 0]), torch.softmax(logits[:, 1:], dim=-1)


@dataclass(frozen=True)
class HarmInputs:
    """Training inputs of the harm head: pooled text features and the tokenised texts as serving sees them."""

    features: np.ndarray  # [N, D]
    presence: sparse.csr_matrix  # [N, vocab]

    def subset(self, idx: np.ndarray) -> "HarmInputs":
        return HarmInputs(self.features[idx], self.presence[idx])


def _logistic(c: float, x: np.ndarray | sparse.csr_matrix, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=3000).fit(x, y)


def fit_harm_head(inputs: HarmInputs, severity: np.ndarray, cfg: HarmConfig) -> HarmHead:
    """Fit both views on `inputs` and severities [N] (0/1/2); all three severities must occur."""
    txt = inputs.features
    mean, std = txt.mean(0), np.clip(txt.std(0), 1e-3, None)
    z = (txt - mean) / std
    weights = idf(inputs.presence)
    bag = tfidf_rows(inputs.presence, weights)
    harmful = (severity > 0).astype(int)
    if set(np.unique(severity)) != set(range(len(SEVERITIES))):
        raise ValueError("the harm head's training data must hold all three severities")
    head = HarmHead(txt.shape[1], inputs.presence.shape[1])
    with torch.no_grad():
        head.mean.copy_(torch.as_tensor(mean))
        head.std.copy_(torch.as_tensor(std))
        head.idf.copy_(torch.as_tensor(weights))
        for layer, x, c in ((head.features, z, cfg.c_features), (head.tokens, bag, cfg.c_tokens)):
            binary, sev = _logistic(c, x, harmful), _logistic(c, x, severity)
            layer.weight.copy_(torch.as_tensor(np.vstack([binary.coef_, sev.coef_]), dtype=torch.float32))
            layer.bias.copy_(torch.as_tensor(np.concatenate([binary.intercept_, sev.intercept_]), dtype=torch.float32))
    return head.eval()


@torch.inference_mode()
def predict_harm(head: HarmHead, inputs: HarmInputs) -> tuple[np.ndarray, np.ndarray]:
    """(P(harmful) [N], severity probabilities [N, 3]) computed as the exported graph computes them."""
    z = (torch.as_tensor(inputs.features, dtype=torch.float32) - head.mean) / head.std
    bag = torch.as_tensor(tfidf_rows(inputs.presence, head.idf.numpy()).toarray(), dtype=torch.float32)
    logits = (head.features(z) + head.tokens(bag)) / 2
    return torch.sigmoid(logits[:, 0]).numpy(), torch.softmax(logits[:, 1:], dim=-1).numpy()


def targets(memes: list[HarmMeme]) -> tuple[np.ndarray, np.ndarray]:
    """(severity [N] int, harmful [N] int)."""
    sev = np.asarray([m.severity for m in memes], dtype=np.int64)
    return sev, (sev > 0).astype(np.int64)
