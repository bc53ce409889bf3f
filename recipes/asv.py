"""Automatic speaker verification on VoxCeleb1 (the SUPERB ASV task by default)."""
from corpora.voxceleb1 import prepare_voxceleb1_for_sv
from framework.verification import SpeakerVerification


class ASV(SpeakerVerification):
    """Speaker verification on VoxCeleb1: EER and minDCF on Vox1-O (veri_test2.txt)."""

    config_file = "asv.yaml"

    def prepare_data(self, prepare_data, target_dir, cache_dir, get_path_only=False):
        return prepare_voxceleb1_for_sv(target_dir, cache_dir, get_path_only, **prepare_data)
