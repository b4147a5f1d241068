"""Model folders of the pack, registered with ComfyUI's ``folder_paths``."""

import os

import folder_paths

# folder name → what goes there (README "Models" explains where to get each file)
MODEL_FOLDERS = {
    "headswap_parsing": "face parsing networks (BiSeNet .pth/.safetensors, SegFormer folders)",
    "headswap_layout": "semantic layout generators",
    "headswap_diffusion": "semantic-mixing latent diffusion checkpoints (LDM format)",
}


def register_model_folders() -> None:
    """Add ``models/<name>`` to each folder, merged with paths that extra_model_paths.yaml already set."""
    for name in MODEL_FOLDERS:
        default_path = os.path.join(folder_paths.models_dir, name)
        paths, extensions = folder_paths.folder_names_and_paths.get(name, ([], set()))
        if default_path not in paths:
            paths.append(default_path)
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions) | set(folder_paths.supported_pt_extensions))
