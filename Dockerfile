FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install -r requirements.txt && pip install --no-deps -r requirements-nodeps.txt
COPY . .
EXPOSE 8501
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health')"
# 0.0.0.0: a container's port can only be published if the app listens on all of the container's interfaces. The
# app then serves only behind a login, or when EXPERT_STUDIO_PUBLISHED_TO_LOOPBACK_ONLY=true states that the port
# is published to the host's 127.0.0.1 (docker-compose.yml); otherwise it shows how to set one up.
CMD ["streamlit", "run", "streamlit_app.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
