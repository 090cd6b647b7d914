# bitaxe-bridge: slim, non-root image running `bitaxe-bridge run`.
#   docker build -t bitaxe-bridge .
#   docker run -v $PWD/config.yaml:/app/config.yaml -v bitaxe-data:/app/data bitaxe-bridge
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY analyzer ./analyzer
COPY simulator ./simulator
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /app --create-home bitaxe
WORKDIR /app
COPY --chown=bitaxe:bitaxe config.yaml ./config.yaml
RUN mkdir -p /app/data && chown bitaxe:bitaxe /app/data
USER bitaxe
VOLUME ["/app/data"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
  CMD ["bitaxe-bridge", "health", "--config", "/app/config.yaml"]
ENTRYPOINT ["bitaxe-bridge"]
CMD ["run", "--config", "/app/config.yaml"]
