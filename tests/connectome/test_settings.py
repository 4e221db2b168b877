"""Settings come from the environment; production refuses the development secret."""

import os
import subprocess
import sys

from django.conf import settings


def _settings_in_subprocess(**env):
    code = ("import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'connectome.settings'); "
            "django.setup(); from django.conf import settings as s; "
            "print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.DATA_ROOT, s.ALLOWED_HOSTS)")
    clean = {k: v for k, v in os.environ.items()
             if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY", "DEBUG", "DATA_ROOT"}}
    return subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR,
                          env={**clean, **env}, capture_output=True, text=True)


def test_production_refuses_the_development_secret_key():
    result = _settings_in_subprocess(DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY is the development default while DEBUG is off" in result.stderr


def test_values_come_from_the_environment(tmp_path):
    result = _settings_in_subprocess(
        DEBUG="0", SECRET_KEY="0123456789" * 5, DATABASE_URL="postgres://u@db.example:5432/c",
        CELERY_BROKER_URL="redis://broker:6379/3", DATA_ROOT=str(tmp_path),
        ALLOWED_HOSTS="connectome.lab.org, localhost",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split(" ", 3)[:3] == [
        "django.db.backends.postgresql", "redis://broker:6379/3", str(tmp_path)]
    assert "['connectome.lab.org', 'localhost']" in result.stdout


def test_defaults_are_sqlite_and_the_filesystem_broker():
    result = _settings_in_subprocess()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("django.db.backends.sqlite3 filesystem:// ")
