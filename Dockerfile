# The store's own services (processor, projector, bridge, lag monitor, HTTP API) for docker-compose.yml:
# the base install is only the client, so the image takes the server and CLI extras.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir "/app[server,cli]" && useradd --system --no-create-home store
USER store
CMD ["assessment-store", "--help"]
