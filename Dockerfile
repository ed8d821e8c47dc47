# One image for both the API and the Celery worker; docker-compose.yml picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/bnlenet

# Dependencies first, so editing the code does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p models app worker bnlenet \
    && touch models/__init__.py app/__init__.py worker/__init__.py bnlenet/__init__.py \
    && pip install . \
    && pip uninstall -y bnlenet

COPY models ./models
COPY bnlenet ./bnlenet
COPY app ./app
COPY worker ./worker
RUN pip install --no-deps .

# A non-root user owns the mount points, so named volumes start out writable by it.
RUN useradd --create-home --uid 10001 --user-group bnlenet \
    && mkdir -p /checkpoints /data \
    && chown bnlenet:bnlenet /checkpoints /data
USER bnlenet
WORKDIR /home/bnlenet

ENV CHECKPOINT_DIR=/checkpoints \
    DATA_DIR=/data

EXPOSE 8000
CMD ["python", "-m", "app.edge", "--host", "0.0.0.0", "--port", "8000"]
