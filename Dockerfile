# syntax=docker/dockerfile:1
# The Sepulki Hammer image: the wheel built from this checkout, installed with its dependencies
# into a clean Python. One image runs every role: the command picks it (serve, ingest, worker,
# migrate; docker-compose.yml). Configuration comes only from SEPULKI_* variables
# (.env.example). tests/test_packaging.py checks the same wheel installs and runs outside the
# checkout.

# Stage 1: the wheel. pyproject.toml (hatchling) decides what it holds: the packages `app` and
# `resolvers`, with schema/, migrations/, seed/ and the GraphiQL example under app/_assets/.
FROM python:3.11-slim AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /dist .

# Stage 2: the runtime. Only the installed wheel and its dependencies: no checkout, no venv, no
# development data.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    SEPULKI_DATA_DIR=/var/lib/sepulki \
    SEPULKI_HOST=0.0.0.0 \
    SEPULKI_PORT=4000
# The wheel is mounted from stage 1 for the install, so it leaves no layer of its own.
RUN --mount=type=bind,from=wheel,source=/dist,target=/dist \
    pip install --no-cache-dir /dist/*.whl
# A fixed non-root uid/gid (10001), so volumes and `runAsNonRoot` policies can name it.
RUN groupadd --system --gid 10001 sepulki \
    && useradd --system --uid 10001 --gid sepulki --home-dir /var/lib/sepulki --no-create-home \
        --shell /usr/sbin/nologin sepulki \
    && install -d -o sepulki -g sepulki -m 0750 /var/lib/sepulki
# The data directory (uploads; development mail and the embedded PostgreSQL when no database URL
# is set). A named volume mounted here starts with this ownership.
WORKDIR /var/lib/sepulki
USER 10001:10001
# 4000: the API; 9464: health and metrics of `ingest` and `worker` (internal network only).
EXPOSE 4000 9464
ENTRYPOINT ["sepulki"]
CMD ["serve"]
