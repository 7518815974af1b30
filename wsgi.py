"""Production entry point: ``gunicorn wsgi:app`` with OTPSVC_* settings in the environment."""

from otpsvc import create_app

app = create_app()
