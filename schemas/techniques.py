"""The 22 persuasion techniques of SemEval-2021 Task 6 (subtask 3), in the official order."""

from enum import StrEnum


class Technique(StrEnum):
    APPEAL_TO_AUTHORITY = "Appeal to authority"
    APPEAL_TO_FEAR = "Appeal to fear/prejudice"
    BLACK_AND_WHITE = "Black-and-white Fallacy/Dictatorship"
    CAUSAL_OVERSIMPLIFICATION = "Causal Oversimplification"
    DOUBT = "Doubt"
    EXAGGERATION = "Exaggeration/Minimisation"
    FLAG_WAVING = "Flag-waving"
    GLITTERING_GENERALITIES = "Glittering generalities (Virtue)"
    LOADED_LANGUAGE = "Loaded Language"
    STRAW_MAN = "Misrepresentation of Someone's Position (Straw Man)"
    NAME_CALLING = "Name calling/Labeling"
    OBFUSCATION = "Obfuscation, Intentional vagueness, Confusion"
    RED_HERRING = "Presenting Irrelevant Data (Red Herring)"
    REDUCTIO_AD_HITLERUM = "Reductio ad hitlerum"
    REPETITION = "Repetition"
    SLOGANS = "Slogans"
    SMEARS = "Smears"
    THOUGHT_TERMINATING_CLICHE = "Thought-terminating cliché"
    WHATABOUTISM = "Whataboutism"
    BANDWAGON = "Bandwagon"
    TRANSFER = "Transfer"
    APPEAL_TO_EMOTIONS = "Appeal to (Strong) Emotions"


TECHNIQUES: tuple[str, ...] = tuple(t.value for t in Technique)

TECHNIQUE_DESCRIPTIONS: dict[str, str] = {
    Technique.APPEAL_TO_AUTHORITY: "States a claim is true because an authority or expert says so.",
    Technique.APPEAL_TO_FEAR: "Builds support by instilling anxiety or panic about an alternative.",
    Technique.BLACK_AND_WHITE: "Presents two options as the only ones, or dictates the one to take.",
    Technique.CAUSAL_OVERSIMPLIFICATION: "Assumes one cause for an issue that has many.",
    Technique.DOUBT: "Questions the credibility of someone or something.",
    Technique.EXAGGERATION: "Makes something look bigger, better or worse than it is, or downplays it.",
    Technique.FLAG_WAVING: "Plays on patriotism or group identity to justify an idea.",
    Technique.GLITTERING_GENERALITIES: "Uses vague virtue words (freedom, justice) that stir approval without argument.",
    Technique.LOADED_LANGUAGE: "Uses emotionally charged words to influence the audience.",
    Technique.STRAW_MAN: "Replaces an opponent's position with a distorted one and refutes that.",
    Technique.NAME_CALLING: "Labels the target as something the audience fears, hates or admires.",
    Technique.OBFUSCATION: "Deliberately unclear wording that lets the audience read what it wants.",
    Technique.RED_HERRING: "Introduces irrelevant material to divert attention from the point.",
    Technique.REDUCTIO_AD_HITLERUM: "Discredits an idea by associating it with a hated group or figure.",
    Technique.REPETITION: "Repeats the same message over and over until it is accepted.",
    Technique.SLOGANS: "A brief, striking phrase that may include labelling and stereotyping.",
    Technique.SMEARS: "Damages someone's reputation with negative propaganda.",
    Technique.THOUGHT_TERMINATING_CLICHE: "A short phrase that discourages critical thought and discussion.",
    Technique.WHATABOUTISM: "Discredits a position by charging the opponent with hypocrisy.",
    Technique.BANDWAGON: "Urges joining in because 'everyone else' is doing it.",
    Technique.TRANSFER: "Projects the qualities of a person, symbol or entity onto another (often via the image).",
    Technique.APPEAL_TO_EMOTIONS: "Uses images or words with strong emotional weight to sway the audience.",
}
