# chatgpt-api-server in a container: gunicorn (gevent workers) on 0.0.0.0:5000 as an unprivileged user.
# Settings, users and the SQLite database live on the /data volume (settings.json is written on first
# start; set ADMIN_API_KEY to choose the first admin's key). Nothing secret is baked into the image.
#
#   docker build -t chatgpt-api-server .
#   docker run -d -p 5000:5000 -v cas-data:/data -e ADMIN_API_KEY=... chatgpt-api-server
#   docker exec CONTAINER python3 /app/main.py users list      # the admin CLI, on the same /data
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only the runtime part of requirements.txt (the lines above "# Tests and lint"), with every version,
# transitive ones included (greenlet), pinned by the whole file used as constraints (extras removed).
COPY requirements.txt ./
RUN sed '/^# Tests and lint/,$d' requirements.txt > /tmp/runtime.txt \
 && sed 's/\[[^]]*\]//' requirements.txt > /tmp/constraints.txt \
 && grep -q '^gunicorn==' /tmp/runtime.txt \
 && pip install -r /tmp/runtime.txt -c /tmp/constraints.txt \
 && rm /tmp/runtime.txt /tmp/constraints.txt

RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cas \
 && mkdir /data \
 && chown cas:cas /data \
 && chmod 0700 /data

# The code belongs to root and is read-only for the server's user.
COPY main.py settings.example.json ./
COPY app ./app
COPY templates ./templates
COPY static ./static
COPY deploy ./deploy

USER cas
# The working folder is the volume, so `python3 /app/main.py` (server or CLI) finds /data/settings.json
# without --settings, and users.json and conversations.db sit beside it.
WORKDIR /data
VOLUME ["/data"]
EXPOSE 5000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:5000/api/health', timeout=4).status != 200)"]

ENTRYPOINT ["python3", "/app/main.py"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
