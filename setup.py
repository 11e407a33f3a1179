"""actsparse: one import namespace over the repo's top-level folders.

`modeling/`, `kernels/`, `eval/`, `launch/`, `recipes/` install as `actsparse.<folder>`; `actsparse` itself
has no directory (PEP 420 namespace), so no top-level `kernels` or `eval` package lands in site-packages.
"""
from setuptools import find_packages, setup

FOLDERS = ["modeling", "kernels", "eval", "launch", "recipes"]

package_dir = {}
packages = []
for folder in FOLDERS:
    package_dir[f"actsparse.{folder}"] = folder
    packages.append(f"actsparse.{folder}")
    for sub in find_packages(where=folder):
        package_dir[f"actsparse.{folder}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
        packages.append(f"actsparse.{folder}.{sub}")

setup(
    name="actsparse",
    version="0.1.0",
    description="Activation-sparse LLaMA-family models: ProSparse / TurboSparse recipes, metrics and kernels",
    python_requires=">=3.10",
    package_dir=package_dir,
    packages=packages,
    package_data={f"actsparse.{f}": ["**/*.yaml", "**/*.sbatch", "**/*.txt", "**/*.jsonl", "**/*.md", "**/*.tmpl"] for f in FOLDERS},
    include_package_data=True,
    # torch is deliberately unpinned here: install `torch==2.13.0` first (README); any installed
    # torch>=2.4 satisfies this and pip pulls nothing more.
    install_requires=[
        "torch>=2.4",
        "deepspeed>=0.16",
        "transformers>=5.0",
        "accelerate>=1.0",
        "datasets>=3.0",
        "safetensors",
        "sentencepiece",
        "gguf",
        "pyyaml",
        "tqdm",
        "rich",
        "tensorboard",
        "matplotlib",
        "numpy",
        "scipy",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout", "lm-eval>=0.4.5", "triton>=3.0"],  # tests cover lm-eval and Triton (interpreter)
        "eval": ["lm-eval>=0.4.5"],
        "kernels": ["triton>=3.0"],
        "flash": ["flash-attn>=2.5"],
    },
    entry_points={"console_scripts": ["actsparse = actsparse.launch.cli:main"]},
)
