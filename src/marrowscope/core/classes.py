"""The seven cell types of bone-marrow-7, and the full names of all 21 classes of the Bone Marrow
Cytomorphology collection (Matek et al., 2021) for models trained on more of it (``--classes``)."""

CLASSES: tuple[str, ...] = ("BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO")

FULL_NAMES: dict[str, str] = {
    "BLA": "Blast",
    "EOS": "Eosinophil",
    "LYT": "Lymphocyte",
    "MON": "Monocyte",
    "NGS": "Segmented neutrophil",
    "NIF": "Not identifiable",
    "PMO": "Promyelocyte",
    # the other 14 classes of the full collection
    "ABE": "Abnormal eosinophil",
    "ART": "Artefact",
    "BAS": "Basophil",
    "EBO": "Erythroblast",
    "FGC": "Faggot cell",
    "HAC": "Hairy cell",
    "KSC": "Smudge cell",
    "LYI": "Immature lymphocyte",
    "MMZ": "Metamyelocyte",
    "MYB": "Myelocyte",
    "NGB": "Band neutrophil",
    "OTH": "Other cell",
    "PEB": "Proerythroblast",
    "PLM": "Plasma cell",
}


def display_name(code: str) -> str:
    """``"BLA"`` -> ``"Blast (BLA)"``; unknown codes are returned as they are."""
    return f"{FULL_NAMES[code]} ({code})" if code in FULL_NAMES else code
