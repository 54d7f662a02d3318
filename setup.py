"""Install neural_parts and npkernels; build the inside-mesh extension when possible.

The extension's sources and flags come from npkernels/_build.py, the same module the
just-in-time build uses, so both paths compile with one set of flags. Nothing is built
when torch cannot be imported at build time (the JIT build on first use covers it).
"""
import os
import runpy

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_TRITON = ".".join(map(str, runpy.run_path(os.path.join(HERE, "npkernels", "_settings.py"))["MIN_TRITON"]))


def extension_build():
    """Return (ext_modules, cmdclass) for the inside-mesh labeller, or ([], {})."""
    try:
        import torch  # noqa: F401  (build against the installed torch)
    except ImportError:
        print("neural_parts: torch not importable at build time; the labeller is built on first use")
        return [], {}
    build = runpy.run_path(os.path.join(HERE, "npkernels", "_build.py"))
    if "setup_extensions" not in build:
        return [], {}
    return build["setup_extensions"](HERE)


ext_modules, cmdclass = extension_build()

setup(
    name="neural_parts",
    version="0.1.0",
    description="Neural Parts (CVPR 2021): fast, faithful re-implementation with Triton/CUDA kernels",
    license="MIT",
    packages=find_packages(include=["neural_parts", "neural_parts.*", "npkernels", "npkernels.*"]),
    package_data={"neural_parts": ["configs/*.yaml", "viewer/*.js", "viewer/*.css", "viewer/*.html"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "numpy",
        "scipy",
        "trimesh",
        "h5py",
        "ninja",
        "pyyaml",
        "tqdm",
        "pillow",
        "scikit-image",
        "embreex; platform_machine == 'x86_64'",
    ],
    extras_require={
        "triton": [f"triton>={MIN_TRITON}; platform_system == 'Linux'"],
        "humans": ["anny"],  # the built-in Anny humans dataset (prepare humans; the default run)
        "dev": [
            "anny",
            "pytest",
            "pytest-benchmark",
            "triton==3.6.0; platform_system == 'Linux'",
            "libigl",
            "selenium",  # the browser tests of the viewer and reports (with Debian's chromium + chromium-driver)
        ],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": []},
)
