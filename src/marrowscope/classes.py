"""The seven cell types of bone-marrow-7 and their full names."""

CLASSES: tuple[str, ...] = ("BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO")

FULL_NAMES: dict[str, str] = {
    "BLA": "Blast",
    "EOS": "Eosinophil",
    "LYT": "Lymphocyte",
    "MON": "Monocyte",
    "NGS": "Segmented neutrophil",
    "NIF": "Not identifiable",
    "PMO": "Promyelocyte",
}


def display_name(code: str) -> str:
    """``"BLA"`` -> ``"Blast (BLA)"``; unknown codes are returned as they are."""
    return f"{FULL_NAMES[code]} ({code})" if code in FULL_NAMES else code
