"""``/portal/``: sign in, search, ask, documents, feedback, profile."""

from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from search.portal import asking, documents, feedback, profile, searching

app_name = "portal"

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(
        template_name="portal/login.html", redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/", auth_views.PasswordChangeView.as_view(
        template_name="portal/password.html",
        success_url=reverse_lazy("portal:password_done")), name="password"),
    path("password/done/", auth_views.PasswordChangeDoneView.as_view(
        template_name="portal/password_done.html"), name="password_done"),
    path("", searching.search_page, name="search"),
    path("ask/", asking.conversations, name="ask"),
    path("ask/<int:conversation_id>/", asking.conversation, name="conversation"),
    path("ask/<int:conversation_id>/turns/<int:turn_id>/", asking.turn_fragment,
         name="turn"),
    path("documents/", documents.document_list, name="documents"),
    path("documents/upload/", documents.upload, name="upload"),
    path("documents/status/", documents.statuses, name="statuses"),
    path("documents/<int:document_id>/", documents.viewer, name="document"),
    path("documents/<int:document_id>/download/", documents.download, name="download"),
    path("feedback/", feedback.send, name="feedback"),
    path("profile/", profile.profile, name="profile"),
]
