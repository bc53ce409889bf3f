"""Keyword spotting on Speech Commands (the SUPERB KS task by default)."""
from corpora.speech_commands import prepare_speech_commands
from framework.classification import UtteranceClassification


class KWS(UtteranceClassification):
    """Keyword spotting on Speech Commands v0.01 (12 classes) or v0.02 (35 words)."""

    config_file = "kws.yaml"

    def prepare_data(self, prepare_data, target_dir, cache_dir, get_path_only=False):
        return prepare_speech_commands(target_dir, **prepare_data, get_path_only=get_path_only)
