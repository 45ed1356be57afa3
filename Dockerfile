# A detection worker against an existing Kafka cluster:
#   docker build -t fraud .
#   docker run --rm -e KAFKA_BOOTSTRAP=kafka:9092 fraud worker
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/var/cache/fraud/numba \
    FRAUD_DATA_DIR=/var/lib/fraud

RUN useradd --create-home --uid 10001 fraud \
 && mkdir -p /var/cache/fraud/numba /var/lib/fraud \
 && chown -R fraud:fraud /var/cache/fraud /var/lib/fraud

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY fraud ./fraud
# decision tables and model tables the worker loads (see tables/README.md)
COPY tables ./tables
# The README's install, without the dev extra.
RUN pip install --no-cache-dir .

USER fraud
# Compile the numba kernels into the cache at build time: the worker starts warm.
RUN python -c "from fraud.scoring.warmup import warmup; warmup()"

VOLUME ["/var/lib/fraud"]
EXPOSE 6066
ENTRYPOINT ["fraud"]
CMD ["worker", "--web-port", "6066"]
