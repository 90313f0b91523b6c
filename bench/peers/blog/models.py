from django.db import models


class Post(models.Model):
    """The protocol's table, created and seeded by bench/db/seed.sql (not managed by Django)."""

    id = models.IntegerField(primary_key=True)
    title = models.TextField()
    author_name = models.TextField()
    body = models.TextField()
    published_at = models.DateTimeField()

    class Meta:
        managed = False
        db_table = "bench_posts"
