import re

from setuptools import find_packages, setup

with open('bert_gluon/__init__.py', encoding='utf-8') as f:
    version = re.search(r"__version__ = '([^']+)'", f.read()).group(1)

setup(
    name='bert_gluon',
    version=version,
    description='BERT as "Dive into Deep Learning" teaches it, on MXNet Gluon',
    packages=find_packages(include=['bert_gluon', 'bert_gluon.*']),
    # C++ sources compiled on first use (bert_gluon/kernels/__init__.py)
    package_data={'bert_gluon.kernels': ['*.cc', '*.h']},
    license='Apache-2.0',
    python_requires='>=3.8',
    # MXNet is not required here on purpose: GPU users install
    # mxnet-cu112==1.9.1 (or another CUDA build) and pip must not pull the
    # CPU wheel over it. CPU users take the `cpu` extra.
    install_requires=['numpy<1.24', 'd2l==0.16.7', 'tqdm'],
    extras_require={'cpu': ['mxnet==1.9.1', 'mkl', 'onednn-cpu-gomp==2023.2.0',
                            'onednn-devel-cpu-gomp==2023.2.0'],
                    'pretrained': ['safetensors', 'tokenizers'],
                    # serving engines (bert_gluon/serving/engines.py) and ONNX export
                    'onnxruntime': ['onnx==1.16.2', 'onnxruntime==1.18.1'],
                    'openvino': ['onnx==1.16.2', 'openvino==2026.4.1'],
                    # builds against the installed MXNet: README, "Several machines"
                    'horovod': ['horovod==0.28.1']},
    entry_points={'console_scripts': ['bert-gluon=bert_gluon.cli:entry']},
)
