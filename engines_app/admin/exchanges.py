"""Exchange accounts (keys write-only: typed in, stored encrypted, never shown again) and
the kill switch (its pulls, and a page to pull it)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from .. import vault
from ..models import CONTROL_PERMISSION, ExchangeAccount, KillSwitch
from ..runtime.exchanges import exchange_problem
from ..services import account_save, kill_switch
from ..vault import VaultError
from .base import ReadOnlyAdmin

KEYS = ("api_key", "secret", "password")


class ExchangeAccountForm(forms.ModelForm):
    """The keys are password inputs that never render a value: left empty on an edit, the
    stored ones stay."""

    api_key = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False)
    )
    secret = forms.CharField(
        required=False, strip=True, widget=forms.PasswordInput(render_value=False)
    )
    password = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text="Only for exchanges that ask for one (a passphrase).",
    )

    class Meta:
        model = ExchangeAccount
        fields = ("name", "exchange", "testnet")

    def clean(self):
        data = super().clean()
        if problem := exchange_problem(data.get("exchange")):
            self.add_error("exchange", problem)
        if self.instance.pk is None and not (data.get("api_key") and data.get("secret")):
            self.add_error("api_key", "a new account needs its API key and secret")
        try:
            vault.encrypt("")  # the key from the environment works, or say why not
        except VaultError as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


@admin.register(ExchangeAccount)
class ExchangeAccountAdmin(admin.ModelAdmin):
    form = ExchangeAccountForm
    list_display = ("name", "exchange", "testnet", "keys", "updated_at")
    fields = ("name", "exchange", "testnet", *KEYS)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CONTROL_PERMISSION) and super().has_module_permission(request)

    @admin.display(description="keys")
    def keys(self, account: ExchangeAccount) -> str:
        return "stored (encrypted)" if account.api_key_encrypted else "none"

    def save_model(self, request, obj, form, change) -> None:
        data = form.cleaned_data
        saved = account_save(
            name=obj.name,
            exchange=obj.exchange,
            testnet=obj.testnet,
            **{key: data.get(key) or "" for key in KEYS},
        )
        obj.pk, obj._state.adding = saved.pk, False

    def get_readonly_fields(self, request, obj=None):
        return ("name",) if obj is not None else ()


class KillSwitchForm(forms.Form):
    close_positions = forms.BooleanField(
        required=False, help_text="Also close their positions at market on the exchange."
    )
    confirm = forms.BooleanField(required=True, label="Yes: stop every live and testnet engine now")


@admin.register(KillSwitch)
class KillSwitchAdmin(ReadOnlyAdmin):
    list_display = ("at", "user", "source", "close_positions", "engines")

    @admin.display(description="engines stopped")
    def engines(self, pull: KillSwitch) -> str:
        return ", ".join(pull.symbols) or "—"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CONTROL_PERMISSION)

    def add_view(self, request: HttpRequest, form_url="", extra_context=None):
        """Pulling the switch: a form with a confirmation box; nothing is added by hand."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = KillSwitchForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            pulled = kill_switch(
                close_positions=form.cleaned_data["close_positions"],
                user=request.user,
                source="admin",
            )
            self.message_user(
                request,
                f"Kill switch pulled: {len(pulled.symbols)} engines stopping.",
                messages.WARNING,
            )
            return HttpResponseRedirect(reverse("admin:engines_app_killswitch_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Pull the kill switch",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/engines_app/killswitch/pull.html", context)
