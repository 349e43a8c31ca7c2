# listsync: one image for every service (web, worker, beat, flower, migrate, emulator).
# Slim base, dependencies pinned in deploy/requirements.lock, runs as an unprivileged user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LISTSYNC_VAR_DIR=/app/var

WORKDIR /app

# Dependencies first: this layer is rebuilt only when the lock changes.
COPY deploy/requirements.lock /tmp/requirements.lock
RUN pip install --no-deps -r /tmp/requirements.lock && rm /tmp/requirements.lock

COPY celeryconfig.py pyproject.toml ./
COPY config ./config
COPY worker ./worker
COPY tasks ./tasks
COPY migrations ./migrations

# The code runs from /app (PYTHONPATH) as it does in a checkout: migrations/ and config/ are
# found beside it, and nothing needs building. `listsync` is the same entry point as pip's.
RUN printf '#!/bin/sh\nexec python -m worker.cli "$@"\n' > /usr/local/bin/listsync \
    && chmod 0755 /usr/local/bin/listsync \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home listsync \
    && mkdir -p /app/var \
    && chown listsync:listsync /app/var

USER listsync:listsync

EXPOSE 8000 5555
CMD ["listsync", "--help"]
