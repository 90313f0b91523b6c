from django.urls import path

from blog import views

urlpatterns = [
    path("bench/health", views.health),
    path("bench/page", views.page),  # W1
    path("bench/cached", views.cached),  # W2
    path("bench/gather", views.gather),  # W3
    path("bench/events", views.events),  # W6
    path("bench/publish", views.publish),  # W6
]
