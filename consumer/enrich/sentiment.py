"""Text sentiment with VADER, a lexicon-and-rules method (vaderSentiment ships its lexicon, so it
runs offline in ~0.1 ms and needs no model). The published pipeline trained an LSTM on a
ChatGPT-sentiment set; that data is not available here, and VADER was built for short,
informal social-media text, which is what meme captions are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from consumer.enrich.base import Record, Stage, StageConfig, StageUnavailable
from schemas.enrichment import Sentiment, SentimentLabel


class SentimentConfig(StageConfig):
    threshold: float = 0.05  # VADER authors' cut-off on the compound score for pos/neg


class SentimentStage(Stage):
    name: ClassVar[str] = "sentiment"
    Config = SentimentConfig

    def __init__(self, config: SentimentConfig) -> None:
        super().__init__(config)
        self.config: SentimentConfig = config
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:
            raise StageUnavailable(
                "sentiment needs vaderSentiment: pip install --no-deps vaderSentiment==3.3.2."
            ) from e
        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, text: str) -> Sentiment:
        # Meme captions are often ALL CAPS; VADER reads caps as emphasis, which is what they mean.
        compound = float(self.analyzer.polarity_scores(text)["compound"]) if text.strip() else 0.0
        t = self.config.threshold
        label = (
            SentimentLabel.POSITIVE if compound >= t else SentimentLabel.NEGATIVE if compound <= -t
            else SentimentLabel.NEUTRAL
        )
        return Sentiment(label=label, compound=max(-1.0, min(1.0, compound)), method="vader")

    def skip_reason(self, record: Record) -> str | None:
        return None if record.best_text.strip() else "no text"

    def process(self, records: Sequence[Record]) -> None:
        for record in records:
            record.sentiment = self.score(record.best_text)
