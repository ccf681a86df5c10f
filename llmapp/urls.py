"""llmapp's JSON API; a project mounts it with ``path("api/llm/", include("llmapp.urls"))``."""

from django.urls import path

from llmapp.api import views

app_name = "llmapp"

urlpatterns = [
    path("usecases/", views.usecase_list, name="usecase-list"),
    path("usecases/<str:name>/", views.usecase_detail, name="usecase-detail"),
    path("usecases/<str:name>/revisions/", views.revision_list, name="usecase-revisions"),
    path("usecases/<str:name>/revert/", views.revert, name="usecase-revert"),
]
