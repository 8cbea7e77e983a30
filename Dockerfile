# The store's own services (processor, projector, bridge, HTTP API) for docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir /app && useradd --system --no-create-home store
USER store
CMD ["assessment-store", "--help"]
