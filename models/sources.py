"""Where a training mode gets its inputs: cached frozen features, or preprocessed tensors for fine-tuning."""

from typing import Any

import numpy as np
import torch

from models.assemble import build_model
from models.config import RunConfig
from models.data import Meme
from models.feature_cache import image_features, text_features
from models.fit_e2e import Inputs, fit_end_to_end, predict_e2e
from models.fit_heads import fit_heads, predict_heads
from models.inpaint import inpaint_text
from models.network import MemeClassifier
from models.preprocess import TextTokenizer, images_to_tensor, load_image
from models.thresholds import Objective, tune_thresholds

VALIDATION_FRACTION = 0.15


def _split_validation(idx: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(idx)
    n_val = max(1, int(round(len(idx) * VALIDATION_FRACTION))) if len(idx) > 4 else 0
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


class FeatureSource:
    """Frozen encoders run once per input (and once ever, thanks to the cache); heads train on features."""

    def __init__(
        self, cfg: RunConfig, model: MemeClassifier, memes: list[Meme], y: np.ndarray, harmful: np.ndarray | None
    ) -> None:
        self.cfg, self.model, self.y, self.harmful = cfg, model, y, harmful
        n = len(memes)
        if model.image_encoder is not None:
            inpaint = cfg.image_encoder.inpaint_text
            self.img = image_features(
                model.image_encoder, memes, inpaint_text if inpaint else None, "inpaint-mser" if inpaint else ""
            )
        else:
            self.img = np.zeros((n, 0), dtype=np.float32)
        if model.text_encoder is not None:
            self.txt = text_features(model.text_encoder, memes)
        else:
            self.txt = np.zeros((n, 0), dtype=np.float32)

    def _fit(self, idx: np.ndarray) -> list[Any]:
        h = None if self.harmful is None else self.harmful[idx]
        return fit_heads(self.cfg, self.img[idx], self.txt[idx], self.y[idx], h)

    def fit_predict(self, train_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
        return predict_heads(self._fit(train_idx), self.img[test_idx], self.txt[test_idx])

    def fit_final(self, idx: np.ndarray) -> MemeClassifier:
        self.model.heads = torch.nn.ModuleList(self._fit(idx))
        return self.model.eval()

    def validation_thresholds(self, objective: Objective, idx: np.ndarray) -> np.ndarray:
        """Without CV: thresholds from a held-out 15% of `idx` (fit on the rest of it)."""
        tr, va = _split_validation(idx, self.cfg.evaluation.seed)
        probs = self.fit_predict(tr, va)[:, : self.y.shape[1]]
        return tune_thresholds(probs, self.y[va], objective)

    def checkpoint(self, model: MemeClassifier) -> dict[str, Any]:
        # Frozen encoders are rebuilt from their pretrained weights at load time: only heads are saved.
        return {"mode": "cached", "heads": model.heads.state_dict()}


class TensorSource:
    """Fine-tuning: decode and tokenise every meme once, then train encoders and head end to end."""

    def __init__(
        self, cfg: RunConfig, model: MemeClassifier, memes: list[Meme], y: np.ndarray, harmful: np.ndarray | None
    ) -> None:
        self.cfg, self.y, self.harmful = cfg, y, harmful
        self.tokenizer_file = model.text_encoder.tokenizer_file if model.text_encoder is not None else None
        self.texts = [m.text for m in memes]
        if model.image_encoder is not None:
            spec = model.image_encoder.image_spec
            ims = [load_image(m.image) for m in memes]
            if cfg.image_encoder.inpaint_text:
                ims = [inpaint_text(im) for im in ims]
            pixels = images_to_tensor(ims, spec)
        else:
            pixels = torch.zeros(len(memes), 3, 1, 1)
        if model.text_encoder is not None:
            ids, mask = TextTokenizer(model.text_encoder.tokenizer_file, model.text_encoder.text_spec)(self.texts)
        else:
            ids, mask = torch.zeros(len(memes), 1, dtype=torch.int64), torch.ones(len(memes), 1, dtype=torch.int64)
        self.inputs = Inputs(pixels, ids, mask)
        self._val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _new_model(self) -> MemeClassifier:
        return build_model(self.cfg, self.y.shape[1], self.harmful is not None, self.texts, self.tokenizer_file)

    def _fit(self, idx: np.ndarray) -> MemeClassifier:
        """Early stopping on 15% of `idx`; that split's probabilities are kept for threshold tuning."""
        tr, va = _split_validation(idx, self.cfg.evaluation.seed)
        model = fit_end_to_end(self.cfg, self._new_model, self.inputs, self.y, self.harmful, tr, va)
        if len(va):
            probs = predict_e2e(model, self.inputs, torch.as_tensor(va))[:, : self.y.shape[1]]
            self._val = (np.sort(idx), va, probs)
        return model

    def fit_predict(self, train_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
        return predict_e2e(self._fit(train_idx), self.inputs, torch.as_tensor(test_idx))

    def fit_final(self, idx: np.ndarray) -> MemeClassifier:
        return self._fit(idx)

    def validation_thresholds(self, objective: Objective, idx: np.ndarray) -> np.ndarray:
        """Thresholds tuned on the validation split of the last fit on `idx` (no extra training)."""
        if self._val is None or not np.array_equal(self._val[0], np.sort(idx)):
            self._fit(idx)
        if self._val is None:  # too few memes for a validation split (smoke runs)
            return np.full(self.y.shape[1], 0.5, dtype=np.float32)
        _, va, probs = self._val
        return tune_thresholds(probs, self.y[va], objective)

    def checkpoint(self, model: MemeClassifier) -> dict[str, Any]:
        return {"mode": "finetune", "state_dict": model.state_dict()}
