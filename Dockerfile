# A slim image that runs the service as a non-root user with its data on a volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    FIREGRID_DATABASE_URL=sqlite:////data/firegrid.db \
    FIREGRID_STORAGE_DIR=/data/blobs

RUN groupadd --system firegrid && useradd --system --gid firegrid --home /srv/firegrid firegrid \
    && mkdir -p /data && chown firegrid:firegrid /data
WORKDIR /srv/firegrid

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
COPY pwa ./pwa
# Editable install: the migrations and the PWA stay beside the code, where app/migrate.py and app/main.py look.
RUN pip install -e . && chown -R root:root /srv/firegrid

USER firegrid
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["sh", "-c", "firegrid migrate && exec firegrid serve --host 0.0.0.0 --port 8000 --workers ${FIREGRID_WORKERS:-2}"]
