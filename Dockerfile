# The docs pages' scripts (infra/provision/web_assets.py, stdlib only) are fetched with npm in a stage of
# their own, so the API image carries them without npm.
FROM python:3.11-slim AS web-assets
RUN apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
COPY infra/provision/web_assets.py /src/web_assets.py
RUN python /src/web_assets.py --cache-dir /cache

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY domain domain
COPY commands commands
COPY projections projections
COPY api api
COPY infra infra
RUN pip install --no-cache-dir .
COPY --from=web-assets /cache/web-assets /cache/web-assets
ENV PIPELINE_CACHE_DIR=/cache
EXPOSE 8000
CMD ["pipeline", "api"]
